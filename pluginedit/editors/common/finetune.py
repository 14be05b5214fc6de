"""The one training loop: fine-tuning after an edit (DisCEdit-U's optional step, the CLI's
``--finetune-epochs``) and training the zoo models (``contrib.train``)."""

from __future__ import annotations

import torch
from torch import nn
from tqdm.auto import tqdm

from ...capture import Split, as_loader, batches
from ...core import checks
from ...core.outputs import output


def fit(
    model: nn.Module,
    train: Split,
    epochs: int,
    lr: float = 2e-3,
    batch_size: int = 128,
    seed: int = 0,
    weight_decay: float = 5e-4,
    max_steps: int | None = None,
    progress: bool = False,
) -> nn.Module:
    """AdamW with a cosine schedule; seeded shuffling so a run repeats bit for bit on one machine.
    The shuffled loader is made once, so each epoch draws the next order of its generator; its
    batches are read through ``capture.batches`` (finite inputs, on the model's device)."""
    checks.number("epochs", epochs, integer=True, at_least=0)
    checks.number("lr", lr, above=0)
    torch.manual_seed(checks.seed(seed))
    loader = as_loader(train, batch_size=batch_size, shuffle=True, seed=seed)
    steps = epochs * len(loader) if max_steps is None else min(max_steps, epochs * len(loader))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=lr, total_steps=max(steps, 1), pct_start=0.15
    )
    model.train()
    bar = tqdm(total=steps, desc="train", disable=not progress, leave=False)
    step = 0
    while step < steps:
        for x, y in batches(model, loader, None, batch_size):  # checked, on the model's device
            loss = nn.functional.cross_entropy(output(model, x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
            if step >= steps:
                break
    bar.close()
    return model.eval()
