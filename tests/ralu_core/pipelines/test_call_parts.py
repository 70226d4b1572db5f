"""The diffusers base on its own (no adapter installed): the parts a prepared call is composed of, the
pipeline's schedule, the submodule swap, the offline Gemma tokenizer. Built from diffusers components directly."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.pipelines.flux.pipeline_flux import calculate_shift, retrieve_timesteps  # noqa: F401 - read by name

from ralu_core.pipelines.dit import PipelineSchedule, swapped_submodule
from ralu_core.pipelines.kv_store import KeysValues
from ralu_core.pipelines.offline import VOCABULARY, make_gemma_tokenizer, small_vae
from ralu_core.pipelines.pipeline_call import DiffusersHooks, DiffusersImages, current_timestep
from ralu_core.strategies.base import StageInfo


class Pipe:
    """What the parts read of a pipeline; the schedule finds its helpers in this class's module (imported above),
    as it finds them in a diffusers pipeline's."""

    def __init__(self, scheduler: Any = None, vae: Any = None) -> None:
        self.scheduler, self.vae = scheduler, vae
        self.transformer = torch.nn.Linear(2, 2)


class Processor:
    def __init__(self, name: str) -> None:
        self.name = name


def test_keys_and_values_stand_in_only_while_a_call_runs_and_keep_a_store_per_stage() -> None:
    modules = {"a": torch.nn.Module(), "b": torch.nn.Module()}
    for name, module in modules.items():
        module.processor = Processor(name)  # type: ignore[assignment]
    originals = {name: module.processor for name, module in modules.items()}
    part = KeysValues(lambda: modules, lambda original, layer: ("stand-in", original, layer), slots=4)
    with part.running():
        part.begin_stage(StageInfo(index=0, num_tokens=16, steps=3))
        assert part.store is None and modules["a"].processor is originals["a"]  # nothing asked: nothing swapped
        part.begin_stage(StageInfo(index=1, num_tokens=64, steps=3, cached_attention=True))
        assert part.store is not None and part.store.num_tokens == 64 and part.store.num_slots == 4
        assert modules["b"].processor == ("stand-in", originals["b"], "b")
        part.ensure_processors()  # once per call: not wrapped twice
        assert modules["b"].processor == ("stand-in", originals["b"], "b")
        assert part.nbytes() == 0
    assert part.store is None and {n: m.processor for n, m in modules.items()} == originals
    with pytest.raises(ValueError), part.running():
        part.begin_stage(StageInfo(index=1, num_tokens=64, steps=3, cached_attention=True))
        raise ValueError("mid-run")
    assert {n: m.processor for n, m in modules.items()} == originals


def test_the_hooks_part_restores_the_current_timestep_and_tells_it_meanwhile() -> None:
    pipe = Pipe()
    pipe._current_timestep = "theirs"  # type: ignore[attr-defined]
    part = DiffusersHooks(pipe)
    with part.running():
        part.begin_stage(StageInfo(index=0, num_tokens=4, steps=1))
        with part.context("cond", None, torch.tensor(500.0)):
            assert float(current_timestep(pipe)) == 500.0 and float(current_timestep(pipe.transformer)) == 500.0
    assert pipe._current_timestep == "theirs" and current_timestep(pipe) is None  # type: ignore[attr-defined]
    assert "_diffusers_hook" not in vars(pipe.transformer)


@pytest.mark.parametrize(("shift", "offset"), [(None, 0.0), (0.1159, 0.1159)])
def test_latents_reach_the_vae_unnormalised(shift: float | None, offset: float) -> None:
    vae = small_vae((8, 8), 4, scaling_factor=0.5, shift_factor=shift, sample_size=16, latent_channels=4)
    images = DiffusersImages(Pipe(vae=vae), output_type="pt", return_dict=True)
    latent = torch.ones(1, 4, 2, 2)
    torch.testing.assert_close(images.vae_latent(latent), latent / 0.5 + offset)


def test_the_pipelines_own_sigmas_and_shift_from_a_fresh_scheduler() -> None:
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    schedule = PipelineSchedule(Pipe(scheduler=scheduler), torch.device("cpu"))
    expected = FlowMatchEulerDiscreteScheduler(shift=3.0)
    retrieve_timesteps(expected, 7, "cpu")
    assert torch.equal(schedule.sigmas(7, None, None), expected.sigmas.float())
    assert schedule.shift(None) == 3.0 and schedule.resolution_shift(4096, 1.15) is None
    assert scheduler.timesteps is None or len(scheduler.timesteps) != 7  # the user's scheduler was not set
    dynamic = PipelineSchedule(Pipe(scheduler=FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True)), "cpu")  # type: ignore[arg-type]
    mu = dynamic.resolution_shift(4096, 1.15)
    assert mu == pytest.approx(1.15) and dynamic.shift(mu) == pytest.approx(torch.e**1.15)


def test_a_swapped_submodule_comes_back_after_an_error() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(2, 2))
    original = model[0]
    with pytest.raises(RuntimeError), swapped_submodule(model, "0", torch.nn.Identity()):
        assert isinstance(model[0], torch.nn.Identity)
        raise RuntimeError("mid-call")
    assert model[0] is original


def test_the_offline_gemma_tokenizer_keeps_every_word_whole_and_starts_with_bos() -> None:
    tokenizer = make_gemma_tokenizer()
    assert make_gemma_tokenizer().get_vocab() == tokenizer.get_vocab()  # the same ids in every process
    for word in VOCABULARY:
        assert len(tokenizer(word, add_special_tokens=False).input_ids) == 1, word
        assert len(tokenizer(" " + word, add_special_tokens=False).input_ids) == 1, word
    ids = tokenizer(["a red circle", ""], padding=True).input_ids
    assert ids[0][0] == tokenizer.bos_token_id and ids[1][-1] == tokenizer.bos_token_id  # padded on the left
