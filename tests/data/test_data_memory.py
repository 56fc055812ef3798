"""Peak memory during conversion is bounded by the chunk, not the dataset (measured in a real process)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    import minari.serialization  # noqa: F401  (import costs are not conversion memory)
    from offrl.bench.data import peak_rss_mb, peak_rss_reset, write_d4rl_file, _rss_mb
    from offrl.data.convert import ted_layout
    from offrl.data.dataset import load_dataset

    path = write_d4rl_file(Path(sys.argv[1]) / "big.hdf5", 150_000, obs_dim=64, act_dim=6, chunk=10_000)
    chunk_rows = int(sys.argv[2])
    before = _rss_mb()
    if not peak_rss_reset():
        print(json.dumps({"skip": "no /proc/self/clear_refs"}))
        sys.exit(0)
    ds = load_dataset(path, chunk_size=chunk_rows)
    growth = peak_rss_mb() - before
    row_bytes = ds.layout.row_bytes
    print(json.dumps({"growth_mb": growth, "dataset_mb": len(ds) * row_bytes / 2**20,
                      "chunk_mb": chunk_rows * row_bytes / 2**20, "n": len(ds)}))
    """
)


def test_conversion_peak_rss_is_bounded_by_the_chunk(tmp_path):
    out = subprocess.run(
        [sys.executable, "-c", _SCRIPT, str(tmp_path), "2048"], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if "skip" in result:
        pytest.skip(result["skip"])
    print(result)
    assert result["n"] == 150_000  # next_observations present: every row kept
    assert result["dataset_mb"] > 60 * result["chunk_mb"]
    # Whole-dataset conversion would need at least dataset_mb (~80 MB); chunked stays far below that.
    assert result["growth_mb"] < 0.3 * result["dataset_mb"], result
