"""Concurrent calls on one pipeline from several threads take turns: every image is what a call alone
gives, never a crash inside diffusers' prompt encoding or a silently mixed-up image."""

from __future__ import annotations

import threading
import time

import torch

import ralu_core
from ralu_flux.testing import make_flux_pipeline

KWARGS = {"height": 64, "width": 64, "max_sequence_length": 16, "output_type": "latent"}


def test_two_threads_sharing_one_pipeline_get_the_images_of_single_calls() -> None:
    pipe = make_flux_pipeline("tiny", seed=0)
    pipe.set_progress_bar_config(disable=True)
    views = {
        "ralu": (ralu_core.accelerate(pipe, "ralu-flux-7x"), {}),
        "base": (ralu_core.accelerate(pipe, "flux-baseline"), {"num_inference_steps": 3}),
    }

    def call(view: str, seed: int) -> torch.Tensor:
        fast, extra = views[view]
        prompt = f"a shape number {seed} " * (1 + seed % 3)  # prompts of several lengths
        return fast(prompt, generator=torch.Generator().manual_seed(seed), **KWARGS, **extra).images

    alone = {(view, seed): call(view, seed) for view in views for seed in range(6)}
    results: dict[tuple[str, int], torch.Tensor] = {}
    errors: list[BaseException] = []

    def worker(view: str) -> None:
        for seed in range(6):
            try:
                results[(view, seed)] = call(view, seed)
            except BaseException as exc:  # collected and reported by the assertion below
                errors.append(exc)

    threads = [threading.Thread(target=worker, args=(view,)) for view in (*views, *views)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert all(torch.equal(results[key], alone[key]) for key in alone)


def test_calls_on_one_pipeline_take_turns_even_through_different_accelerated_views() -> None:
    """Each call runs start to finish before another thread's call on the same pipeline begins (a slow
    observer makes interleaving certain if they did not)."""
    from ralu_core import hookimpl
    from ralu_core.plugins import create_plugin_manager

    events: list[tuple[int, int]] = []

    class SlowObserver:
        @hookimpl
        def ralu_on_step_end(self, event) -> None:  # type: ignore[no-untyped-def]
            events.append((threading.get_ident(), event.step))
            time.sleep(0.01)

    pipe = make_flux_pipeline("tiny", seed=0)
    pipe.set_progress_bar_config(disable=True)
    pm = create_plugin_manager(plugins=[SlowObserver()])
    views = [ralu_core.accelerate(pipe, "ralu-flux-7x", plugin_manager=pm) for _ in range(2)]
    threads = [
        threading.Thread(target=lambda v=view: v("a", generator=torch.Generator().manual_seed(0), **KWARGS))
        for view in views
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    owners = [owner for owner, _ in events]
    assert len(owners) == 20 and len(set(owners[:10])) == 1 and len(set(owners[10:])) == 1  # no interleaving
