"""Diagnostic for benchmarks/discedit.py (not part of its acceptance numbers): prune the Fashion-MNIST
VGG/ResNet as the benchmark does, then compare accuracy without fine-tuning with accuracy after
re-estimating only the BatchNorm running statistics on the 1500 statistics samples (no gradient step).
Accuracy on a 3000-sample holdout of the *train* split (disjoint from the statistics samples), never
on the test split.

    python benchmarks/discedit_bnrecal.py vgg,resnet 0.2,0.45
"""
import copy, sys, time, torch
torch.set_num_threads(1)
sys.path.insert(0, "benchmarks")
import discedit as B
from pluginedit import api, report, data, train
from pluginedit.data import Split
fm = data.load_dataset("fashion-mnist", "/work/shared/data")
g = torch.Generator().manual_seed(11)
perm = torch.randperm(len(fm.train), generator=g)
stats = Split(fm.train.x[perm[:1500]], fm.train.y[perm[:1500]])
hold = Split(fm.train.x[perm[1500:4500]], fm.train.y[perm[1500:4500]])
ex = hold.x[:2]

@torch.no_grad()
def recal(m):
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d) or isinstance(mod, torch.nn.BatchNorm1d):
            mod.reset_running_stats(); mod.momentum = None
    m.train()
    for i in range(0, 1500, 250):
        m(stats.x[i:i + 250])
    m.eval()

for arch in sys.argv[1].split(","):
    model = train.pretrained(arch, fm)
    layers = B.uncoupled_layers(model, ex)
    for r in [float(x) for x in sys.argv[2].split(",")]:
        for c in ["l1", "random", "sp:", "sp:features=linear"]:
            m = copy.deepcopy(model)
            if c.startswith("sp:"):
                kv = dict(x.split("=") for x in c[3:].split(";")) if len(c) > 3 else {}
                api.edit(m, "discedit-sp", data=stats, num_classes=10, ratio=r, example_inputs=ex, layers=layers, max_samples=1500, **kv)
            else:
                s = api.score(m, c, data=stats, targets=layers, num_classes=10, max_samples=1500)
                idx = B.select_lowest(s, r, layers)
                B.zero_components(m, idx, True, B.EditRecord("x")); B.remove_zeroed(m, ex, idx)
            a0 = report.accuracy(m, hold, 10)[0]; recal(m); a1 = report.accuracy(m, hold, 10)[0]
            print(arch, r, c, round(1 - B.params(m) / B.params(model), 3), "noFT", round(a0, 4), "BN-recal", round(a1, 4), flush=True)
