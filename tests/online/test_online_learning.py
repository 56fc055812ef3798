"""Pure online CQL learns Pendulum: `offrl train --env Pendulum-v1 --algo cql --online-steps 3000` (the API
call the CLI makes), small networks, one update per collected frame. A uniformly random policy scores about
-1250 on Pendulum-v1 (the bundled datasets' reference, 100 episodes); this run ends near -170 (seed 0, two
measurements: -172 and -150 with 64-unit layers), so the bound below leaves a wide margin."""

from __future__ import annotations

from offrl.runs import train

RANDOM_RETURN = -1254.24  # README / datasets/recipes.yaml: uniform random policy, 100 episodes


def test_online_cql_from_scratch_learns_pendulum(tmp_path):
    run = train(None, "cql", online_env="Pendulum-v1", online_steps=3000, frames_per_batch=50, utd=50,
                batch_size=128, eval_every=3000, eval_episodes=5, progress=False, out=tmp_path / "runs",
                seed=0, **{"cql.hidden_sizes": [32, 32], "cql.actor_lr": 1e-3, "cql.critic_lr": 1e-3,
                           "cql.num_random": 4, "cql.min_q_weight": 1.0, "cql.gamma": 0.98, "cql.tau": 0.02,
                           "online.init_random_frames": 1000, "log_interval": 250, "num_threads": 1})
    summary = run.summary
    assert summary["status"] == "completed" and summary["online"]["frames"] == 3000
    online = run.metrics["online_return_mean"].dropna()
    assert online.iloc[0] < -900  # the first episodes: random actions, about the random policy's return
    final = summary["final"]["return_mean"]
    assert final > RANDOM_RETURN + 650, final  # > -604: clearly better than random (measured about -170)
    assert online.iloc[-1] > online.iloc[0] + 400  # the collected episodes improved too
