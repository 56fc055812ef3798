"""The ``online`` config section: online fine-tuning after the offline steps, and training from scratch."""

from __future__ import annotations

from dataclasses import dataclass

from offrl.errors import UserError

__all__ = ["OnlineConfig"]


@dataclass
class OnlineConfig:
    """The ``online`` config section (``offrl train --online-steps N``; ``--set online.KEY=VALUE``)."""

    steps: int = 0
    """Env steps to collect online after the offline steps (0: offline only). total_frames = steps x frame_skip."""
    env_id: str | None = None
    """Online env; default: the dataset's env (like evaluation)."""
    frames_per_batch: int = 50
    """Env steps per collected batch; each batch is followed by ``optim_steps_per_batch`` updates, so the
    update-to-data ratio is optim_steps_per_batch / frames_per_batch."""
    replay: str = "mix"
    """``mix``: dataset + separate online buffer, mixed per batch (offline fraction scheduled below);
    ``append``: online rows appended to one buffer holding the dataset, uniform sampling."""
    capacity: int = 200_000
    """Online transitions kept (memory-mapped; oldest overwritten)."""
    start_fraction: float = 0.5
    """Offline share of each batch when online collection starts (``mix``). Cal-QL / RLPD: 0.5."""
    final_fraction: float = 0.5
    """Offline share after ``anneal_frames`` collected frames (linear in between)."""
    anneal_frames: int = 0
    """Frames over which the offline share goes from start to final (0: final at once)."""
    calql: bool = False
    """Cal-QL (continuous CQL only): clamp the penalised policy Q-values from below by the Monte-Carlo
    return-to-go, offline and online (Nakamoto et al. 2023)."""
    min_q_weight: float | None = None
    """CQL weight during the online phase (None: keep the offline one). Lower it to let online data speak."""
    eps_init: float | None = None
    """DQN and discrete CQL: epsilon when online collection starts (None: DQN's dqn.eps_init; discrete CQL
    0.1 when fine-tuning a trained Q-network, 1.0 from scratch)."""
    eps_end: float | None = None
    """DQN and discrete CQL: final epsilon (None: dqn.eps_end; discrete CQL 0.01 fine-tuning, 0.05 from
    scratch)."""
    eps_anneal_frames: int | None = None
    """DQN and discrete CQL: env steps over which epsilon decays linearly (None: dqn.annealing_num_steps;
    discrete CQL 10,000)."""
    num_workers: int = 1
    """Worker processes of the asynchronous collector (``async_collection=true``)."""
    init_random_frames: int = 0
    """Uniformly random actions for the first frames (from-scratch runs)."""
    scratch_dir: str | None = None
    """Folder of the online buffer's memory map (default: a temporary folder)."""

    def validate(self) -> None:
        """Reject values no run can use, naming the key."""
        if self.steps < 0:
            raise UserError(f"--online-steps (online.steps): must be 0 or positive, got {self.steps}")
        if self.frames_per_batch <= 0:
            raise UserError(f"online.frames_per_batch: must be positive, got {self.frames_per_batch}")
        if self.replay not in ("mix", "append"):
            raise UserError(f"online.replay={self.replay!r}: use 'mix' or 'append'")
        if self.capacity <= 0:
            raise UserError(f"online.capacity: must be positive, got {self.capacity}")
        for name in ("start_fraction", "final_fraction"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise UserError(f"online.{name}: must be in [0, 1], got {v}")
        if self.anneal_frames < 0:
            raise UserError(f"online.anneal_frames: must be >= 0, got {self.anneal_frames}")
        if self.min_q_weight is not None and self.min_q_weight < 0:
            raise UserError(f"online.min_q_weight: must be >= 0, got {self.min_q_weight}")
        if self.num_workers <= 0:
            raise UserError(f"online.num_workers: must be positive, got {self.num_workers}")
