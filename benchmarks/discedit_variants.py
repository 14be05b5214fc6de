"""Diagnostic for benchmarks/discedit.py: witness variants (hook point, features, method, one-shot vs
layer-by-layer) vs l1 / random / taylor at given channel ratios, accuracy without fine-tuning on a
3000-sample holdout of the *train* split (never the test split).

    python benchmarks/discedit_variants.py vgg 0.1,0.2 "l1,random,taylor,sp:,sp:hook=act,sp:features=linear,sp:method=mpm,witness:hook=act"
"""
torch.set_num_threads(1)
sys.path.insert(0, "benchmarks")
import discedit as B
from pluginedit import api, report, data, train
from pluginedit.data import Split
fm = data.load_dataset("fashion-mnist", "/work/shared/data")
g = torch.Generator().manual_seed(11)
perm = torch.randperm(len(fm.train), generator=g)
stats = Split(fm.train.x[perm[:1500]], fm.train.y[perm[:1500]])
hold = Split(fm.train.x[perm[1500:4500]], fm.train.y[perm[1500:4500]])   # train holdout, never test
ex = hold.x[:2]
archs = sys.argv[1].split(",")
ratios = [float(r) for r in sys.argv[2].split(",")]
configs = sys.argv[3].split(",")
for arch in archs:
    model = train.pretrained(arch, fm)
    layers = B.uncoupled_layers(model, ex)
    print(arch, "dense", report.accuracy(model, hold, 10)[0], layers, flush=True)
    for r in ratios:
        for c in configs:
            m = copy.deepcopy(model); t = time.time()
            if c.startswith("sp:"):
                kv = dict(x.split("=") for x in c[3:].split(";")) if len(c) > 3 else {}
                api.edit(m, "discedit-sp", data=stats, num_classes=10, ratio=r, example_inputs=ex, layers=layers, max_samples=1500, **kv)
            else:
                kind, _, rest = c.partition(":")
                kv = dict(x.split("=") for x in rest.split(";")) if rest else {}
                s = api.score(m, kind, data=stats, targets=layers, num_classes=10, max_samples=1500, **kv)
                idx = B.select_lowest(s, r, layers)
                B.zero_components(m, idx, True, B.EditRecord("x")); B.remove_zeroed(m, ex, idx)
            print(arch, r, c, round(1 - B.params(m) / B.params(model), 3), round(report.accuracy(m, hold, 10)[0], 4), round(time.time() - t, 1), flush=True)
