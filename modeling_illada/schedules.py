"""How many masked tokens each denoising step reveals.

A schedule turns the number of masked tokens of each row in a block, and the block's step budget, into per-step
reveal counts that sum to the mask count. `linear` is LLaDA's `get_num_transfer_tokens`: the counts are as even
as possible, and the first `count % steps` steps reveal one token more. `cosine` reveals few tokens early and many
late (MaskGIT's arccos-free form), which suits models whose first guesses are poor.
"""

import math

import torch


class LinearSchedule:
    """Even split, earlier steps take the remainder (LLaDA)."""

    name = "linear"

    def __call__(self, mask_counts: torch.Tensor, steps: int) -> torch.Tensor:
        base = mask_counts // steps  # (B,)
        remainder = mask_counts % steps  # (B,)
        counts = base[:, None].repeat(1, steps)  # (B, steps)
        counts += (torch.arange(steps, device=mask_counts.device)[None, :] < remainder[:, None]).long()
        return counts


class CosineSchedule:
    """Cumulative fraction revealed after step s is 1 - cos(pi/2 * s / steps); rounding keeps the exact total."""

    name = "cosine"

    def __call__(self, mask_counts: torch.Tensor, steps: int) -> torch.Tensor:
        fractions = torch.tensor(
            [1.0 - math.cos(math.pi / 2 * s / steps) for s in range(steps + 1)], dtype=torch.float64,
            device=mask_counts.device,
        )  # (steps + 1,)
        fractions[-1] = 1.0
        cumulative = torch.round(mask_counts[:, None].double() * fractions[None, :]).long()  # (B, steps + 1)
        return cumulative[:, 1:] - cumulative[:, :-1]


SCHEDULES = {schedule.name: schedule for schedule in (LinearSchedule(), CosineSchedule())}
