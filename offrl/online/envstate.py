"""The full state of a running gymnasium env, as plain containers of tensors and strings, for checkpoints.

An exact online resume needs the env exactly where the collector left it: mid-episode, with its random
generator at the same point. Pickling the env would cover everything, but a checkpoint is read with
``torch.load(weights_only=True)`` (no code runs while loading), so the state is captured field by field:

* every layer of the wrapper chain (``TimeLimit``'s step count, ``OrderEnforcing``'s flag...) and the base
  env: attributes holding numpy arrays and scalars, Python ``bool``/``int``/``float``/``str``/``None`` and
  tuples/lists of them (classic control: ``state``, ``steps_beyond_terminated``, ``last_u``...);
* numpy random generators held by those layers (``np_random``; ``Generator`` or legacy ``RandomState``),
  their bit generator state, exactly;
* MuJoCo envs (``model``/``data``): ``mj_getState(mjSTATE_INTEGRATION)`` (time, positions, velocities,
  actuator state, controls, applied forces, the solver's warm start) plus every array of ``MjData`` whose
  size is the model's (kinematics and other derived quantities that env code reads before stepping, e.g.
  body positions). Arrays sized by the step's contacts/constraints are recomputed by the next step.

Attributes of other types (spaces, specs, renderers, dicts, arbitrary objects) are not captured: an env
keeping episode state in such an object resumes from whatever its fresh instance holds. Floats are kept as
hex strings and arrays as raw bytes, so the round trip is bit for bit.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from offrl.errors import UserError

__all__ = ["gym_env_state", "gym_layers", "load_gym_env_state", "load_object_env_state", "object_env_state"]

_SKIP = frozenset({"spec", "metadata", "render_mode", "_saved_kwargs", "_ezpickle_args", "_ezpickle_kwargs"})


def gym_layers(env: Any) -> list[Any]:
    """The wrapper chain of a gymnasium env, outermost first, ending with the base env."""
    layers = [env]
    while hasattr(layers[-1], "env") and layers[-1].env is not layers[-1] and len(layers) < 64:
        inner = layers[-1].env
        if inner is None or any(inner is layer for layer in layers):
            break
        layers.append(inner)
    return layers


# ------------------------------------------------------------------------------------------ encoding
def _array(value: np.ndarray) -> dict[str, Any]:
    value = np.ascontiguousarray(value)
    raw = value.tobytes()
    data = torch.frombuffer(bytearray(raw), dtype=torch.uint8) if raw else torch.zeros(0, dtype=torch.uint8)
    return {"kind": "array", "dtype": value.dtype.str, "shape": [int(s) for s in value.shape], "bytes": data}


def _decode_array(enc: dict[str, Any]) -> np.ndarray:
    raw = torch.as_tensor(enc["bytes"], dtype=torch.uint8).numpy().tobytes()
    return np.frombuffer(raw, dtype=np.dtype(enc["dtype"])).reshape([int(s) for s in enc["shape"]]).copy()


def _encode(value: Any, *, depth: int = 0) -> dict[str, Any] | None:
    """A value as a plain dict (None: not a kind kept). bool before int: bool is an int subclass."""
    if value is None:
        return {"kind": "none"}
    if isinstance(value, (bool, np.bool_)):
        return {"kind": "bool", "value": int(bool(value))} if isinstance(value, bool) else _scalar(value)
    if isinstance(value, np.generic):
        return _scalar(value)
    if isinstance(value, int):
        return {"kind": "int", "value": str(value)}  # may exceed 64 bits (seeds)
    if isinstance(value, float):
        return {"kind": "float", "value": float(value).hex()}
    if isinstance(value, str):
        return {"kind": "str", "value": value}
    if isinstance(value, np.ndarray):
        return _array(value) if value.dtype.kind in "biufc" else None
    if isinstance(value, (tuple, list)) and depth < 4:
        items = [_encode(v, depth=depth + 1) for v in value]
        if any(item is None for item in items):
            return None
        return {"kind": type(value).__name__, "items": items}
    return None


def _scalar(value: np.generic) -> dict[str, Any] | None:
    if np.asarray(value).dtype.kind not in "biufc":
        return None
    return {"kind": "scalar", "array": _array(np.asarray(value))}


def _decode(enc: dict[str, Any]) -> Any:
    kind = enc["kind"]
    if kind == "none":
        return None
    if kind == "bool":
        return bool(int(enc["value"]))
    if kind == "int":
        return int(enc["value"])
    if kind == "float":
        return float.fromhex(enc["value"])
    if kind == "str":
        return str(enc["value"])
    if kind == "array":
        return _decode_array(enc)
    if kind == "scalar":
        return _decode_array(enc["array"])[()]
    if kind in ("tuple", "list"):
        items = [_decode(item) for item in enc["items"]]
        return tuple(items) if kind == "tuple" else items
    raise UserError(f"checkpoint env state: unknown value kind {kind!r}; it was written by another offrl version")


def _rng_tree(value: Any) -> Any:
    """A bit generator's state dict (nested dicts, big ints, arrays) with every leaf encoded."""
    if isinstance(value, dict):
        return {"kind": "dict", "items": {str(k): _rng_tree(v) for k, v in value.items()}}
    enc = _encode(value)
    if enc is None:
        raise TypeError(f"unsupported random state leaf {type(value).__name__}")
    return enc


def _rng_untree(enc: dict[str, Any]) -> Any:
    if enc["kind"] == "dict":
        return {k: _rng_untree(v) for k, v in enc["items"].items()}
    return _decode(enc)


def _rng_state(gen: Any) -> dict[str, Any] | None:
    if isinstance(gen, np.random.Generator):
        return {"type": "Generator", "state": _rng_tree(gen.bit_generator.state)}
    if isinstance(gen, np.random.RandomState):
        return {"type": "RandomState", "state": _rng_tree(gen.get_state(legacy=False))}
    return None


def _make_rng(enc: dict[str, Any], current: Any) -> Any:
    state = _rng_untree(enc["state"])
    if enc["type"] == "RandomState":
        gen = current if isinstance(current, np.random.RandomState) else np.random.RandomState()
        gen.set_state(state)
        return gen
    name = state.get("bit_generator", "PCG64")
    if isinstance(current, np.random.Generator) and type(current.bit_generator).__name__ == name:
        gen = current
    else:
        bit_generator = getattr(np.random, str(name), None)
        if bit_generator is None:
            raise UserError(f"checkpoint env state: numpy has no bit generator {name!r}; resume with the numpy "
                            "version that wrote it")
        gen = np.random.Generator(bit_generator())
    gen.bit_generator.state = state
    return gen


# ------------------------------------------------------------------------------------------- MuJoCo
def _is_mujoco(layer: Any) -> bool:
    model, data = getattr(layer, "__dict__", {}).get("model"), getattr(layer, "__dict__", {}).get("data")
    return type(model).__name__ == "MjModel" and type(data).__name__ == "MjData"


def _mujoco_state(model: Any, data: Any) -> dict[str, Any]:
    import mujoco

    spec = mujoco.mjtState.mjSTATE_INTEGRATION
    state = np.empty(mujoco.mj_stateSize(model, spec), dtype=np.float64)
    mujoco.mj_getState(model, data, state, spec)
    arrays = {}
    for name in dir(data):
        if name.startswith("_"):
            continue
        value = getattr(data, name, None)
        if isinstance(value, np.ndarray) and value.dtype.kind in "biuf" and value.size:
            arrays[name] = _array(value)
    return {"integration": _array(state), "arrays": arrays}


def _load_mujoco_state(model: Any, data: Any, enc: dict[str, Any]) -> None:
    import mujoco

    for name, arr in enc["arrays"].items():
        target = getattr(data, name, None)
        value = _decode_array(arr)
        # arrays sized by this step's contacts/constraints may differ in a fresh MjData: the next step
        # recomputes them, so only the model-sized ones (kinematics, forces, ...) are copied
        if isinstance(target, np.ndarray) and target.shape == value.shape and target.flags.writeable:
            target[...] = value
    state = _decode_array(enc["integration"])
    spec = mujoco.mjtState.mjSTATE_INTEGRATION
    if state.shape[0] != mujoco.mj_stateSize(model, spec):
        raise UserError("checkpoint env state: the MuJoCo model differs from the one that wrote it; resume in "
                        "the same env")
    mujoco.mj_setState(model, data, state, spec)


# ------------------------------------------------------------------------------------- public API
def _capture(obj: Any, skip: frozenset[str], encode: Any) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """``obj``'s attributes outside ``skip``: (encoded by ``encode``, numpy generators' states, the rest)."""
    attrs: dict[str, Any] = {}
    rngs: dict[str, Any] = {}
    rest: dict[str, Any] = {}
    for name, value in vars(obj).items():
        if name in skip:
            continue
        rng = _rng_state(value)
        if rng is not None:
            rngs[name] = rng
            continue
        enc = encode(value)
        if enc is not None:
            attrs[name] = enc
        else:
            rest[name] = value
    return attrs, rngs, rest


def _restore(obj: Any, attrs: dict[str, Any], rngs: dict[str, Any], decode: Any) -> None:
    for name, enc in attrs.items():
        setattr(obj, name, decode(enc))
    for name, enc in rngs.items():
        setattr(obj, name, _make_rng(enc, vars(obj).get(name)))


def gym_env_state(env: Any) -> dict[str, Any]:
    """Everything :func:`load_gym_env_state` needs to put ``env`` (a gymnasium env, wrappers included) back
    exactly where it is now; plain dicts/lists of tensors and strings (``weights_only``-loadable)."""
    layers = []
    for layer in gym_layers(env):
        attrs, rngs, _ = _capture(layer, _SKIP | {"env"}, _encode)
        entry: dict[str, Any] = {"type": type(layer).__name__, "attrs": attrs, "rngs": rngs}
        if _is_mujoco(layer):
            entry["mujoco"] = _mujoco_state(layer.model, layer.data)
        layers.append(entry)
    return {"id": _env_id(env), "layers": layers}


def _env_id(env: Any) -> str:
    spec = getattr(env, "spec", None)
    return str(getattr(spec, "id", None) or type(getattr(env, "unwrapped", env)).__name__)


def load_gym_env_state(env: Any, state: dict[str, Any]) -> None:
    """Restore :func:`gym_env_state` into ``env``, an env built the same way (same id, same wrappers)."""
    if state.get("id") is not None and str(state["id"]) != _env_id(env):
        raise UserError(f"checkpoint env state: the checkpoint was collected in {state['id']}, this run's env is "
                        f"{_env_id(env)}; resume in the env that wrote it")
    layers = gym_layers(env)
    saved = list(state["layers"])
    ours = [type(layer).__name__ for layer in layers]
    theirs = [str(entry["type"]) for entry in saved]
    if ours != theirs:
        raise UserError(f"checkpoint env state: the checkpoint's env is {' > '.join(theirs)}, this run's is "
                        f"{' > '.join(ours)}; resume in the env that wrote it")
    for layer, entry in zip(layers, saved, strict=True):
        _restore(layer, entry["attrs"], entry["rngs"], _decode)
        if entry.get("mujoco") is not None:
            if not _is_mujoco(layer):
                raise UserError(f"checkpoint env state: {entry['type']} was a MuJoCo env when saved, but is not "
                                "one now; resume in the env that wrote it")
            _load_mujoco_state(layer.model, layer.data, entry["mujoco"])


# ------------------------------------------------------------------------- PettingZoo / MPE object graphs
#: Packages whose objects :func:`object_env_state` walks into (the env, its wrappers, its world and entities).
OBJECT_ENV_PACKAGES = ("pettingzoo", "mpe2")
_OBJECT_SKIP = _SKIP | {"viewer", "screen", "game_font", "renderOn"}


def _is_env_object(value: Any) -> bool:
    return (type(value).__module__ or "").split(".")[0] in OBJECT_ENV_PACKAGES and hasattr(value, "__dict__")


def _encode_value(value: Any, depth: int = 0) -> dict[str, Any] | None:
    """:func:`_encode`, plus dicts with string keys (PettingZoo's per-agent ``rewards``, ``infos``...)."""
    if isinstance(value, dict) and depth < 4:
        if not all(isinstance(k, str) for k in value):
            return None
        items = {k: _encode_value(v, depth + 1) for k, v in value.items()}
        return None if any(v is None for v in items.values()) else {"kind": "dict", "items": items}
    return _encode(value)


def _decode_value(enc: dict[str, Any]) -> Any:
    if enc["kind"] == "dict":
        return {k: _decode_value(v) for k, v in enc["items"].items()}
    return _decode(enc)


def object_env_state(env: Any, *, depth: int = 0) -> dict[str, Any]:
    """The state of a PettingZoo env as an object graph (plain dicts of tensors and strings): for ``env`` and
    every object of :data:`OBJECT_ENV_PACKAGES` it holds (wrappers, the MPE world, its agents and landmarks,
    their ``state`` and ``action``, the agent selector), the attributes :func:`_encode_value` keeps and the
    numpy random generators, bit for bit. What else such an env keeps (spaces, renderers) is rebuilt by
    constructing it the same way."""
    attrs, rngs, rest = _capture(env, _OBJECT_SKIP, _encode_value)
    children: dict[str, Any] = {}
    for name, value in rest.items():
        if depth < 8 and _is_env_object(value):
            children[name] = {"kind": "object", "state": object_env_state(value, depth=depth + 1)}
        elif depth < 8 and isinstance(value, list) and value and all(_is_env_object(v) for v in value):
            children[name] = {"kind": "objects", "items": [object_env_state(v, depth=depth + 1) for v in value]}
    return {"type": type(env).__name__, "attrs": attrs, "rngs": rngs, "children": children}


def load_object_env_state(env: Any, state: dict[str, Any]) -> None:
    """Restore :func:`object_env_state` into ``env``, an env built the same way."""
    if str(state.get("type")) != type(env).__name__:
        raise UserError(f"checkpoint env state: the checkpoint's env holds a {state.get('type')} where this run's "
                        f"holds a {type(env).__name__}; resume in the env that wrote it")
    _restore(env, state["attrs"], state["rngs"], _decode_value)
    for name, child in state["children"].items():
        current = getattr(env, name, None)
        if child["kind"] == "object":
            load_object_env_state(current, child["state"])
            continue
        if not isinstance(current, list) or len(current) != len(child["items"]):
            raise UserError(f"checkpoint env state: {name} holds {len(child['items'])} objects in the checkpoint, "
                            f"{len(current) if isinstance(current, list) else 'none'} here; resume in the env "
                            "that wrote it")
        for obj, item in zip(current, child["items"], strict=True):
            load_object_env_state(obj, item)

