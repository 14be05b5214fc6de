"""The zoo sweep (issue 24), one command:  python benchmarks/zoo.py [--only vit,swin] [--timeout 120]

Every image-classification family that ``transformers`` ships, as a small random-initialised
model (``pluginedit.contrib.vision_zoo``), and the torchvision classification models at 64 px
wherever ``import torchvision`` works, each pruned to half of every layer's channels four ways,
every (model, method) in its own subprocess with a wall-clock limit:

  * peer: Torch-Pruning's own ``MetaPruner`` with ``MagnitudeImportance(p=1)``, ratio 0.5 per
    layer, the classifier ignored; attention blocks (``query``/``key``/``value`` + a head count)
    are handed over as ``num_heads`` with ``prune_head_dims=True`` and their head attributes
    updated afterwards, as Torch-Pruning's ViT example does;
  * prune: ``pe.score(model, "l1")`` + ``pe.edit(model, "prune", ratio=0.5)``;
  * modhifi-p: ``pe.edit(model, "modhifi-p", data=<random calibration images>, ratio=0.5)``;
  * reload: each pruned model of prune and modhifi-p through ``pe.save`` (no ``source=``) ->
    ``pe.load``, max |logits difference|.

A method "prunes" a model when it raises nothing, removes parameters and the model still runs
with its output shape. Writes zoo.{json,md} to --out (default: a scratch folder, see
benchmarks/_results.py; --out benchmarks/results updates the committed results)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback

import _results  # the helper beside this script

METHODS = ("peer", "prune", "modhifi-p")
MARK = "ZOO-RESULT "


def _params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def _logits(model, x):
    import torch

    with torch.no_grad():
        out = model(x)
    return getattr(out, "logits", out) if not torch.is_tensor(out) else out


def _model(spec: str):
    """(model, example batch) of ``hf:<family>`` or ``tv:<torchvision name>``."""
    import torch

    kind, name = spec.split(":", 1)
    if kind == "hf":
        from pluginedit.contrib import vision_zoo

        return vision_zoo.build(name)
    import pluginedit as pe

    torch.manual_seed(0)
    model = pe.load_model(f"torchvision.models:{name}", {"num_classes": 10})
    return model, torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))


def _attention(model):
    """(block, [q, k, v], heads) of every attention block, in either naming transformers uses."""
    from torch import nn

    out = []
    for m in model.modules():
        for names in (("query", "key", "value"), ("q_proj", "k_proj", "v_proj")):
            qkv = [getattr(m, n, None) for n in names]
            if all(isinstance(lin, nn.Linear) for lin in qkv):
                break
        else:
            continue
        heads = getattr(m, "num_attention_heads", None) or getattr(m, "num_heads", None)
        size = getattr(m, "head_dim", None) or getattr(m, "attention_head_size", None)
        if not isinstance(heads, int) and isinstance(size, int):
            heads = qkv[0].out_features // size
        if isinstance(heads, int):
            out.append((m, qkv, heads))
    return out


def _peer(model, x) -> None:
    """Torch-Pruning's MetaPruner with L1 magnitude, as its examples use it (prune_hf_vit.py:
    the heads' dimensions pruned, the head count kept, the head size attributes updated)."""
    import torch
    import torch_pruning as tp
    from torch import nn

    out = _logits(model, x)
    blocks = _attention(model)
    ignored = [
        m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == out.shape[-1]
    ]
    pruner = tp.pruner.MetaPruner(
        model,
        x,
        importance=tp.importance.MagnitudeImportance(p=1),
        pruning_ratio=0.5,
        ignored_layers=ignored,
        output_transform=lambda o: (o if torch.is_tensor(o) else o.logits).sum(),
        num_heads={lin: heads for _, qkv, heads in blocks for lin in qkv},
        prune_head_dims=True,
        prune_num_heads=False,
    )
    pruner.step()
    for m, qkv, _ in blocks:
        heads = pruner.num_heads[qkv[0]]
        for name, value in (
            ("num_attention_heads", heads),
            ("num_heads", heads),
            ("head_dim", qkv[0].out_features // heads),
            ("attention_head_size", qkv[0].out_features // heads),
            ("all_head_size", qkv[0].out_features),
        ):
            if isinstance(getattr(m, name, None), int):
                setattr(m, name, value)


def _reload(model, x) -> dict:
    import pluginedit as pe

    t = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        pe.save(model, tmp)
        again = pe.load(tmp)
        diff = float((_logits(model, x) - _logits(again, x)).abs().max())
    return {"max_abs_diff": diff, "seconds": round(time.time() - t, 2)}


def _error(e: BaseException) -> str:
    first = (str(e).strip().splitlines() or [""])[0]
    return f"{type(e).__name__}: {first[:300]}"


def worker(spec: str, method: str) -> dict:
    """One (model, method) in this process: the row fields it measured."""
    import warnings

    import torch

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    import pluginedit as pe

    model, x = _model(spec)
    params0, shape = _params(model), tuple(_logits(model, x).shape)
    row = {"params_before": params0}
    t = time.time()
    try:
        if method == "peer":
            _peer(model, x)
        elif method == "prune":
            scores = pe.score(model, "l1", example_inputs=x)
            pe.edit(model, "prune", scores, example_inputs=x, ratio=0.5)
        else:
            g = torch.Generator().manual_seed(2)
            calib = torch.randn(64, *x.shape[1:], generator=g)
            labels = torch.randint(0, shape[-1], (64,), generator=g)
            rec = pe.edit(model, "modhifi-p", data=(calib, labels), ratio=0.5, calib_samples=64)
            row["kept_whole"] = sorted(rec.info.get("kept_whole", {}))
        out = _logits(model, x)
    except Exception as e:  # noqa: BLE001 - recorded, the sweep goes on
        row |= {"status": "error", "error": _error(e), "seconds": round(time.time() - t, 2)}
        if os.environ.get("ZOO_TRACEBACK"):
            traceback.print_exc()
        return row
    row["seconds"] = round(time.time() - t, 2)
    row["params_after"] = _params(model)
    if tuple(out.shape) != shape or not bool(torch.isfinite(out).all()):
        row |= {
            "status": "error",
            "error": f"output {tuple(out.shape)} (finite: "
            f"{bool(torch.isfinite(out).all())}), was {shape}",
        }
    elif row["params_after"] >= params0:
        row |= {"status": "error", "error": "removed no parameter"}
    else:
        row["status"] = "ok"
    if method != "peer" and row["status"] == "ok":
        try:
            row["reload"] = _reload(model, x)
        except Exception as e:  # noqa: BLE001
            row["reload"] = {"error": _error(e)}
    return row


def run_one(spec: str, method: str, timeout: float) -> dict:
    cmd = [sys.executable, __file__, "--worker", spec, method]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    t = time.time()
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "seconds": round(time.time() - t, 1)}
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith(MARK)]
    if not lines:
        tail = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        return {"status": "crash", "error": f"exit {done.returncode}: {tail[:300]}"}
    return json.loads(lines[-1][len(MARK) :])


def specs(only: list[str] | None) -> tuple[list[str], str | None]:
    """The models to sweep and, when torchvision is not usable, why."""
    from pluginedit.contrib.vision_zoo import FAMILIES

    out = [f"hf:{f}" for f in FAMILIES]
    why = None
    try:
        import torchvision.models as tvm

        out += [f"tv:{n}" for n in tvm.list_models(module=tvm)]
    except Exception as e:  # noqa: BLE001 - e.g. a CUDA build of torchvision on a CPU torch
        why = _error(e)
    if only:
        out = [s for s in out if s.split(":", 1)[1] in only or s in only]
    return out, why


def cell(r: dict) -> str:
    if r["status"] == "skipped":
        return "–"
    if r["status"] == "ok":
        kept = len(r.get("kept_whole", []))
        return f"ok {r['params_after'] / r['params_before']:.2f}x, {r['seconds']:.1f} s" + (
            f" ({kept} group{'s' * (kept > 1)} kept whole)" if kept else ""
        )
    if r["status"] == "timeout":
        return f"**timeout** ({r['seconds']:.0f} s)"
    return f"**{r['error'][:140]}** ({r.get('seconds', 0):.1f} s)".replace("|", "/")


def reload_cell(r: dict) -> str:
    rl = r.get("reload")
    if rl is None:
        return "–"
    if "error" in rl:
        return f"**{rl['error'][:140]}**".replace("|", "/")
    return f"{'ok' if rl['max_abs_diff'] <= 1e-5 else '**differs**'} ({rl['max_abs_diff']:.1e})"


def counts(rows: list[dict]) -> dict:
    def ok(m):
        return sum(r[m]["status"] == "ok" for r in rows)

    def reloads(m):
        return sum(
            r[m].get("reload", {}).get("max_abs_diff", 1.0) <= 1e-5
            for r in rows
            if r[m]["status"] == "ok"
        )

    return {
        "models": len(rows),
        "peer": ok("peer"),
        "prune": ok("prune"),
        "modhifi-p": ok("modhifi-p"),
        "reload_prune": reloads("prune"),
        "reload_modhifi-p": reloads("modhifi-p"),
        "pruned_by_peer_not_prune": [
            r["model"] for r in rows if r["peer"]["status"] == "ok" and r["prune"]["status"] != "ok"
        ],
        "pruned_by_peer_not_modhifi-p": [
            r["model"]
            for r in rows
            if r["peer"]["status"] == "ok" and r["modhifi-p"]["status"] != "ok"
        ],
    }


NOTES = """Notes on this run:

- The peer hands attention blocks to Torch-Pruning as `num_heads` with `prune_head_dims=True`
  and updates the head attributes afterwards, as Torch-Pruning's `prune_hf_vit.py` does; `prune`
  and `modhifi-p` remove whole heads (`pluginedit.graph.attention`), the head counts recorded as
  replayable steps. Attention blocks outside BERT's `attention.self` / `intermediate.dense`
  layout (Data2Vec-Vision, MobileViT, PVT) go through the dependency graph in `modhifi-p` too.
- Where torch-pruning misreads the graph, its full removal leaves a model that no longer runs:
  DINOv2's classifier reads `cat(cls token, mean of the patch tokens)`, Swin's patch merging
  concatenates four slices of one tensor, PVT, PVT-v2 and SegFormer reshape by widths
  torch-pruning does not see, LeViT's groups carry indices past a layer's width. The peer
  raises; `prune` reports an `EditError` naming it, the model restored; `modhifi-p` prunes a
  copy one group at a time with a forward after each (`pluginedit.graph.probe`), keeps whole
  the groups after which the forward fails ("N groups kept whole", named in
  `record.info["kept_whole"]`) and prunes the rest.
- CvT: torch-pruning cannot trace it (the peer and `prune` fail); `modhifi-p` prunes its FFN
  neurons directly (the BERT-layout transformer path, no tracing).
- FocalNet: torch-pruning's group building never closes (the peer runs into the time limit);
  `prune` and `modhifi-p` stop after a few seconds with an `EditError` naming the block
  (`pluginedit.graph.groups.bounded`: 60 s or 20 dependencies per module for one group).
  Hiera: torch-pruning raises while building a group; both stop with an `EditError` naming it.
"""


def _params_before(row: dict):
    return next((row[m]["params_before"] for m in METHODS if "params_before" in row[m]), "?")


def markdown(rows: list[dict], c: dict, tv_why: str | None, timeout: float) -> str:
    lines = [
        "# Zoo sweep: peer (Torch-Pruning MetaPruner, L1) vs l1 + prune vs modhifi-p, and reload",
        "",
        f"Random-initialised small models, ratio 0.5 per layer, each (model, method) in its own "
        f"subprocess limited to {timeout:.0f} s. Cells: parameters kept (after / before) and the "
        "method's seconds, or the error it raised. Reload: `pe.save` (no `source=`) -> "
        "`pe.load`, max |Δ logits| (ok ≤ 1e-5).",
        "",
        f"**peer prunes {c['peer']} of {c['models']}; prune {c['prune']}; modhifi-p "
        f"{c['modhifi-p']}; reload {c['reload_prune']} of {c['prune']} (prune), "
        f"{c['reload_modhifi-p']} of {c['modhifi-p']} (modhifi-p).**",
        "",
    ]
    if tv_why:
        lines += [f"torchvision models: not swept, `import torchvision` fails here ({tv_why}).", ""]
    lines += [
        "| model | params | peer | prune | reload (prune) | modhifi-p | reload (modhifi-p) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {_params_before(r)} | {cell(r['peer'])} | "
            f"{cell(r['prune'])} | {reload_cell(r['prune'])} | {cell(r['modhifi-p'])} | "
            f"{reload_cell(r['modhifi-p'])} |"
        )
    return "\n".join(lines) + "\n\n" + NOTES


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--only", help="comma-separated families / torchvision names (default: all)")
    ap.add_argument(
        "--methods",
        default=",".join(METHODS),
        help="comma-separated subset of " + ", ".join(METHODS),
    )
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds per (model, method)")
    ap.add_argument("--out", help=_results.out_help("zoo"))
    ap.add_argument(
        "--summarise-only",
        action="store_true",
        help="rewrite zoo.md from the zoo.json in --out (its stamp kept), running nothing",
    )
    ap.add_argument("--worker", nargs=2, metavar=("MODEL", "METHOD"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(MARK + json.dumps(worker(*args.worker)), flush=True)
        return
    if args.summarise_only:
        out = _results.out_dir(args.out, "zoo")
        obj = _results.read(out / "zoo.json")
        tv = None if obj["torchvision"] == "swept" else obj["torchvision"]
        md = markdown(obj["rows"], obj["counts"], tv, obj["timeout_s"])
        _results.write_markdown(out / "zoo.md", md, obj["stamp"])
        return
    import torch

    torch.set_num_threads(1)  # as the workers run (and as the stamp says)
    out = _results.out_dir(args.out, "zoo")
    todo, tv_why = specs(args.only.split(",") if args.only else None)
    methods = args.methods.split(",")
    rows = []
    for spec in todo:
        row = {"model": spec}
        for m in METHODS:
            row[m] = run_one(spec, m, args.timeout) if m in methods else {"status": "skipped"}
            print(
                f"{spec:28s} {m:10s} {cell(row[m]) if m in methods else 'skipped'} {reload_cell(row[m])}",
                flush=True,
            )
        rows.append(row)
    c = counts(rows)
    s = _results.write(
        out / "zoo",
        {"counts": c, "torchvision": tv_why or "swept", "timeout_s": args.timeout, "rows": rows},
        markdown(rows, c, tv_why, args.timeout),
    )
    print(json.dumps(c), "\n->", out, s["command"])


if __name__ == "__main__":
    main()
