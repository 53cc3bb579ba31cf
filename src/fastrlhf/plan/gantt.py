"""Gantt chart of a simulated schedule: one row per GPU, one bar per task (matplotlib, Agg)."""

from __future__ import annotations

from fastrlhf.plan.simulator import Simulation

COLORS = {"generate": "tab:blue", "inference": "tab:green", "train": "tab:red",
          "realloc": "tab:purple", "reload": "tab:gray"}


def draw_gantt(sim: Simulation, path: str, iteration: int | None = None, title: str = "") -> None:
    """Write a PNG of one iteration (default: the middle one) to `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    it = sim.n_iters // 2 if iteration is None else iteration
    tasks = [t for t in sim.tasks if t.iteration == it]
    t0 = min(t.start for t in tasks)
    n_gpus = len(sim.gpu_busy)
    fig, ax = plt.subplots(figsize=(10, 1.5 + min(n_gpus, 64) * 0.12))
    for task in tasks:
        for g in task.gpus:
            ax.barh(g, task.end - task.start, left=task.start - t0, height=0.8,
                    color=COLORS.get(task.kind, "black"), edgecolor="white", linewidth=0.3)
    for task in tasks:  # one label per task, at its first GPU
        mid = (task.start + task.end) / 2 - t0
        ax.text(mid, task.gpus[0], task.name, fontsize=6, ha="center", va="center")
    ax.set_xlabel("seconds (iteration %d)" % it)
    ax.set_ylabel("GPU")
    ax.invert_yaxis()
    ax.set_title(title or f"iteration time {sim.iteration_time:.2f} s")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in COLORS.values()]
    ax.legend(handles, list(COLORS), fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)
