"""Collectors for the online phase: torchrl envs from offrl's env resolution, sync or async torchrl
collectors, and a guard that turns env failures into a clean, checkpointed stop.

Synchronous (default): torchrl ``Collector`` — collection and updates alternate in one process, so a run
is reproducible from its seed. Asynchronous (``async_collection``): torchrl ``MultiAsyncCollector`` with
``num_workers`` processes; the workers keep stepping their envs while the trainer updates, with the policy
weights sent to them after each batch (``update_policy_weights_``). What that changes: a batch may have
been collected by weights one or more batches old (slightly off-policy), results depend on process timing
(not reproducible bit for bit), and a resumed run continues from the checkpoint's buffer and counters but
not the exact batches an uninterrupted run would have seen.

Resume (:meth:`GuardedCollector.resume_state`, in the trainer's checkpoint under ``collector``): for the
synchronous collector the checkpoint holds the env's full state (:mod:`offrl.online.envstate`: wrappers,
physics, numpy generator), the collector's carried tensordict (the observation the next step starts from,
trajectory ids), its frame/iteration counters and trajectory-id pool, so a resumed run collects exactly the
batches an uninterrupted one would (the torch generator the policy samples with is the trainer's ``rng``).
The asynchronous collector's workers are not asked for their envs: its resume starts new episodes, and the
episodes open at the checkpoint are dropped from the online statistics (``on_restart`` callbacks).
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import sys
import tempfile
import threading
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.collectors import Collector, MultiAsyncCollector
from torchrl.envs import Compose, DoubleToFloat, EnvBase, GymWrapper, TransformedEnv

from offrl.data import envs
from offrl.errors import UserError
from offrl.online.envstate import gym_env_state, load_gym_env_state, load_object_env_state, object_env_state

__all__ = ["EnvFactory", "GuardedCollector", "make_collector", "env_factory"]


class EnvFactory:
    """A picklable ``() -> torchrl EnvBase`` (worker processes of an async collector call it).

    ``worker_logs``: a folder; in a worker process the factory sends that process's Python stderr to a file
    there, so an env that raises in a worker does not print the worker's traceback over the run's output:
    :class:`GuardedCollector` reads the error's last line back into its one-line message."""

    def __init__(self, target: Any, *, seed: int | None = None, device: str = "cpu",
                 worker_logs: str | None = None) -> None:
        self.target, self.seed, self.device = target, seed, device
        self.worker_logs = worker_logs

    def gym(self) -> Any:
        """The gymnasium env (offrl's catalog: version drift notes and missing-extra errors)."""
        return envs.make_env(self.target)

    def __call__(self) -> EnvBase:
        if self.worker_logs is not None and multiprocessing.parent_process() is not None:
            _capture_worker_stderr(self.worker_logs)
        env = GymWrapper(self.gym(), categorical_action_encoding=True, device=self.device)
        doubles = [k for k, s in env.observation_spec.items(True, True) if s.dtype == torch.float64]
        if doubles:  # MuJoCo observations are float64; the networks (and offrl datasets) are float32
            env = TransformedEnv(env, DoubleToFloat(in_keys=doubles))
        if self.seed is not None:
            env.set_seed(int(self.seed))
        return env


_CAPTURED: list[str] = []  # this worker process's stderr file, once redirected


def _capture_worker_stderr(folder: str) -> None:
    """In a collector worker: Python's stderr (the traceback multiprocessing prints when the worker dies) goes
    to ``<folder>/worker-<pid>.log``, line-buffered so it is on disk before the process exits."""
    if _CAPTURED:
        return
    path = os.path.join(folder, f"worker-{os.getpid()}.log")
    try:
        sys.stderr = open(path, "w", buffering=1, encoding="utf-8", errors="replace")  # noqa: SIM115 - process-long
    except OSError:  # the folder is gone (the run is shutting down): keep the inherited stderr
        return
    _CAPTURED.append(path)


def worker_error(folder: str | None) -> str | None:
    """The last line of the last traceback a worker wrote under ``folder`` (``RuntimeError: ...``), or None."""
    if folder is None or not os.path.isdir(folder):
        return None
    found = None
    for name in sorted(os.listdir(folder)):
        try:
            with open(os.path.join(folder, name), encoding="utf-8", errors="replace") as f:
                text = f.read()
        except OSError:
            continue
        if "Traceback (most recent call last)" not in text:
            continue
        lines = [line for line in text.splitlines() if line.strip() and not line[0].isspace()]
        if lines:
            found = lines[-1].strip()
    return found


def env_factory(dataset: Any = None, env_id: str | None = None, *, seed: int | None = None,
                device: str = "cpu") -> EnvFactory:
    """The online env: ``env_id`` if given, else the dataset's (its ``env_spec`` or the name map)."""
    if dataset is not None:
        resolution = dataset.env_resolution(env_id)
        if resolution is None:
            raise UserError(f"{dataset.name}: no env known for online fine-tuning; pass one with --env "
                            "(or --set dataset.env_id=ENV_ID)")
        dataset.make_env(env_id).close()  # an env whose spaces do not fit the data: one line, before any worker
        target = resolution
    elif env_id is not None:
        target = envs.resolve_env(override=env_id) or env_id
    else:
        raise UserError("online training needs an env: pass --env ENV_ID or a --dataset that names one")
    return EnvFactory(target, seed=seed, device=device)


def make_collector(factory: EnvFactory, policy: Any, *, frames_per_batch: int, async_collection: bool = False,
                   num_workers: int = 1, device: str = "cpu", init_random_frames: int = 0) -> Any:
    """A torchrl collector that never stops on its own (``total_frames=-1``: the trainer counts frames).

    ``init_random_frames``: the first frames come from uniformly random actions (torchrl's option), which
    seeds a from-scratch run's buffer."""
    if int(frames_per_batch) <= 0:
        raise UserError(f"online.frames_per_batch: must be a positive integer, got {frames_per_batch}")
    common = dict(frames_per_batch=int(frames_per_batch), total_frames=-1, device=device,
                  init_random_frames=int(init_random_frames) or None)
    if async_collection:
        if int(num_workers) <= 0:
            raise UserError(f"online.num_workers: must be a positive integer, got {num_workers}")
        # each worker builds its own env, seeded apart; MultiAsyncCollector's set_seed does that for us
        logs = tempfile.mkdtemp(prefix="offrl-collector-workers-")
        worker_factory = EnvFactory(factory.target, device=factory.device, worker_logs=logs)
        collector = MultiAsyncCollector([worker_factory] * int(num_workers), policy, **common)
        collector.offrl_worker_logs = logs  # GuardedCollector reads a failed worker's error from there
        weakref.finalize(collector, shutil.rmtree, logs, True)
        if factory.seed is not None:
            collector.set_seed(int(factory.seed))
    else:
        collector = Collector(factory(), policy, auto_register_policy_transforms=False, **common)
    collector.offrl_seed = factory.seed  # its envs are seeded with it (the trainer does not seed them again)
    return collector


def _nonfinite(data: TensorDictBase) -> str | None:
    """Name of the first observation/reward entry holding NaN or inf, else None."""
    for key in ("observation", ("next", "observation"), ("next", "reward")):
        value = data.get(key, None)
        if value is None:
            continue
        leaves = value.values(True, True) if isinstance(value, TensorDictBase) else [value]
        for leaf in leaves:
            if torch.is_floating_point(leaf) and not bool(torch.isfinite(leaf).all()):
                return key if isinstance(key, str) else "/".join(key)
    return None


def _td_state(td: TensorDictBase) -> dict[str, Any] | None:
    """A tensordict as nested dicts of tensor copies (None if it holds anything else)."""
    out: dict[str, Any] = {}
    for key in td.keys():
        if td.is_non_tensor(key):
            return None
        value = td.get(key)
        if isinstance(value, TensorDictBase):
            sub = _td_state(value)
            if sub is None or list(value.batch_size)[:td.batch_dims] != list(td.batch_size):
                return None
            out[key] = sub
        elif isinstance(value, torch.Tensor):
            out[key] = value.detach().clone().as_subclass(torch.Tensor)
        else:
            return None
    return out


#: torchrl transforms that keep no state between steps (an env under them resumes exactly).
_STATELESS_TRANSFORMS = (DoubleToFloat,)


def _td_batches(td: TensorDictBase, prefix: tuple[str, ...] = ()) -> list[list[Any]]:
    """``[[key, ...], batch_size]`` of every nested tensordict whose batch is longer than its parent's (a
    multi-agent group: ``("agents",)`` with ``[n_agents]``), outermost first."""
    out: list[list[Any]] = []
    for key in td.keys():
        value = td.get(key)
        if isinstance(value, TensorDictBase):
            if value.batch_dims > td.batch_dims:
                out.append([list((*prefix, key)), [int(s) for s in value.batch_size]])
            out += _td_batches(value, (*prefix, key))
    return out


def _under_stateless(env: Any, stateless: tuple[type, ...]) -> Any:
    """``env`` without its transforms when each is one of ``stateless`` (they keep nothing between steps),
    else None."""
    if isinstance(env, TransformedEnv):
        transform = env.transform
        parts = list(transform) if isinstance(transform, Compose) else [transform]
        if not all(isinstance(t, stateless) for t in parts):
            return None
        return env.base_env
    return env


def _pettingzoo_env(env: Any) -> Any:
    """The PettingZoo env under a torchrl ``PettingZooWrapper`` (possibly under stateless transforms such as
    ``RewardSum``, whose running sum lives in the carried tensordict); None for anything else."""
    from torchrl.envs import PettingZooWrapper, RewardSum

    env = _under_stateless(env, (*_STATELESS_TRANSFORMS, RewardSum))
    if isinstance(env, PettingZooWrapper) and type(env) is PettingZooWrapper:
        return getattr(env, "_env", None)
    return None


def _env_state(env: Any) -> dict[str, Any] | None:
    """The checkpointable state of the collector's env: a gymnasium env's (:func:`gym_env_state`), a
    PettingZoo env's under ``"pettingzoo"`` (:func:`object_env_state`), else None."""
    gym_env = _gym_env(env)
    if gym_env is not None:
        return gym_env_state(gym_env)
    pz_env = _pettingzoo_env(env)
    if pz_env is not None:
        return {"pettingzoo": object_env_state(pz_env)}
    return None


def _load_env_state(env: Any, state: dict[str, Any]) -> bool:
    """Restore :func:`_env_state`; False if it does not fit this env."""
    if "pettingzoo" in state:
        pz_env = _pettingzoo_env(env)
        if pz_env is None:
            return False
        load_object_env_state(pz_env, state["pettingzoo"])
        return True
    gym_env = _gym_env(env)
    if gym_env is None:
        return False
    load_gym_env_state(gym_env, state)
    return True


def _gym_env(env: Any) -> Any:
    """The gymnasium env under a torchrl ``GymWrapper`` (possibly under stateless transforms such as offrl's
    ``DoubleToFloat`` for MuJoCo); None for anything else: other transforms and batched envs keep state
    offrl does not capture."""
    env = _under_stateless(env, _STATELESS_TRANSFORMS)
    if isinstance(env, GymWrapper) and type(env) is GymWrapper:
        return getattr(env, "_env", None)
    return None


class GuardedCollector:
    """Wraps a torchrl collector for the trainer: batches pass through unchanged, but an env that raises or
    returns a non-finite observation/reward ends the iteration after calling ``on_error(message)`` (the
    trainer's ``request_stop``: it checkpoints and exits cleanly). ``hooks`` run on every good batch.

    ``resume_state()`` / ``load_resume_state()`` checkpoint what an exact resume needs (module docstring);
    when a resume cannot continue the episodes in progress (async collector, a checkpoint written after an
    env error), ``on_restart`` callbacks run (the online statistics drop their open episodes).

    ``error`` holds the message afterwards. Attribute access falls through to the collector
    (``frames_per_batch``, ``update_policy_weights_``, ``shutdown``...).
    """

    def __init__(self, collector: Any, *, on_error: Callable[[str], None] | None = None,
                 hooks: tuple[Callable[[TensorDictBase], None], ...] = (),
                 on_restart: tuple[Callable[[], None], ...] = ()) -> None:
        self.collector = collector
        self.on_error = on_error
        self.hooks = list(hooks)
        self.on_restart = list(on_restart)
        self.error: str | None = None
        self.batches = 0
        self._final_state: dict[str, Any] | None = None  # taken at shutdown (the env is closed after)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["collector"], name)

    @property
    def frames_per_batch(self) -> int:
        c = self.collector
        return int(getattr(c, "frames_per_batch", None) or c.requested_frames_per_batch)

    @property
    def exact_resume(self) -> bool:
        """Whether :meth:`resume_state` captures the env and episode in progress (the sync collector over a
        gymnasium env); the async collector's resume starts new episodes."""
        c = self.collector
        env = getattr(c, "env", None)
        return isinstance(c, Collector) and (_gym_env(env) is not None or _pettingzoo_env(env) is not None)

    def _fail(self, message: str) -> None:
        self.error = message
        if self.on_error is not None:
            self.on_error(message)

    def __iter__(self) -> Iterator[TensorDictBase]:
        it = iter(self.collector)
        while True:
            try:
                data = next(it)
            except StopIteration:
                return
            except Exception as exc:  # noqa: BLE001 - any env failure stops the run cleanly
                # an async worker's env error reaches this process as "a worker failed": name the env's own
                self._fail(f"env error during online collection after {self.batches} batches: "
                           f"{self._worker_error() or _one_line(exc)}")
                self.shutdown()
                return
            bad = _nonfinite(data)
            if bad is not None:
                self._fail(f"env error during online collection after {self.batches} batches: non-finite "
                           f"values in {bad!r} (NaN or inf from the env); the batch was discarded")
                self.shutdown()
                return
            self.batches += 1
            for hook in self.hooks:
                hook(data)
            yield data
            if self.error is not None:  # a worker died while the trainer updated (update_policy_weights_)
                self.shutdown()
                return

    def _worker_error(self) -> str | None:
        what = worker_error(getattr(self.collector, "offrl_worker_logs", None))
        return f"{what} (in a collector worker process)" if what else None

    def update_policy_weights_(self, *args: Any, **kwargs: Any) -> None:
        """The collector's weight update. For worker processes it waits for each worker's acknowledgement,
        which a worker whose env raised never sends: the update then runs in a helper thread while this one
        watches the workers, and a dead worker ends collection like any env error instead of a hang."""
        c = self.collector
        procs = list(getattr(c, "procs", None) or [])
        if not procs:
            c.update_policy_weights_(*args, **kwargs)
            return
        if self.error is not None:
            return
        failure: list[BaseException] = []

        def send() -> None:
            try:
                c.update_policy_weights_(*args, **kwargs)
            except BaseException as exc:  # noqa: BLE001 - re-raised below, in the caller's thread
                failure.append(exc)

        thread = threading.Thread(target=send, name="offrl-weight-update", daemon=True)
        thread.start()
        while thread.is_alive():
            thread.join(0.05)
            dead = [(i, p.exitcode) for i, p in enumerate(procs) if p.exitcode is not None]
            if dead and thread.is_alive():
                index, code = dead[0]
                self._fail(f"env error during online collection after {self.batches} batches: "
                           f"{self._worker_error() or f'collector worker {index} exited (code {code})'}")
                return
        if failure:
            raise failure[0]

    # ------------------------------------------------------------------------------------ checkpoint
    def resume_state(self) -> dict[str, Any]:
        """``batches``, ``exact`` and, for the sync collector: ``frames``, ``iter``, ``traj_pool``, and when
        ``exact`` the ``carrier`` tensordict and the gymnasium ``env`` state (plain tensors and strings)."""
        if self._final_state is not None:
            return self._final_state
        state: dict[str, Any] = {"batches": int(self.batches), "exact": False}
        c = self.collector
        if not isinstance(c, Collector) or getattr(c, "closed", False) or not hasattr(c, "_carrier"):
            return state
        state["frames"] = int(c._frames)
        state["iter"] = int(c._iter)
        if getattr(c, "track_traj_ids", False):
            state["traj_pool"] = c._traj_pool.state_dict()
        carrier = _td_state(c._carrier)
        env_state = _env_state(c.env) if self.error is None and carrier is not None else None
        if env_state is not None:
            state.update(exact=True, carrier=carrier, carrier_batch=[int(s) for s in c._carrier.batch_size],
                         carrier_groups=_td_batches(c._carrier), env=env_state)
        return state

    def load_resume_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`resume_state` into a freshly built collector of the same kind (before iterating)."""
        self.batches = int(state.get("batches", 0))
        self.error, self._final_state = None, None
        c = self.collector
        exact = False
        if isinstance(c, Collector) and "frames" in state:
            c._frames = int(state["frames"])
            c._iter = int(state["iter"])
            if state.get("traj_pool") is not None and getattr(c, "track_traj_ids", False):
                c._traj_pool.load_state_dict({"traj_id": torch.as_tensor(state["traj_pool"]["traj_id"])})
            if state.get("exact") and _load_env_state(c.env, state["env"]):
                old = c._carrier
                carrier = TensorDict(state["carrier"], batch_size=list(state["carrier_batch"]), device=old.device)
                for key, size in state.get("carrier_groups", []):
                    carrier.get(tuple(key)).batch_size = list(size)
                if getattr(c, "_carrier_has_no_device", False):
                    carrier.clear_device_()
                c._carrier = carrier
                exact = True
        if not exact:
            for callback in self.on_restart:
                callback()

    def shutdown(self) -> None:
        if self._final_state is None:
            try:  # what a later resume (a longer budget) continues from; after an env error: not exact
                self._final_state = self.resume_state()
            except Exception:  # noqa: BLE001 - a collector that cannot say: the resume starts new episodes
                self._final_state = {"batches": int(self.batches), "exact": False}
        try:
            self.collector.shutdown()
        except Exception:  # noqa: BLE001 - shutting down a collector whose env already failed
            pass


def _one_line(exc: BaseException) -> str:
    """``Type: message`` on one line (a worker's error can carry its whole traceback in the message)."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
