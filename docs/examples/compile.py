"""torch.compile with ralu: compile the transformer's repeated blocks once, then run any recipe on the
pipeline. The first call of a size compiles one graph per block class and token count; later calls of that
size compile nothing. Where no host-device synchronisation is left in the sampling loop is shown too.

On a GPU, with the real weights, replace the reference model by ``FluxPipeline.from_pretrained(...)``. Here it
runs on the shipped reference model ``flux-shapes`` (128 x 128), on any device:

    ./dev python docs/examples/compile.py            # inductor: generates kernels (slow to compile on a CPU)
    ./dev python docs/examples/compile.py eager      # dynamo's capture and guards only, in seconds
"""

from __future__ import annotations

import sys
import time

import torch

import ralu_core
from ralu_bench.models import load_reference_pipeline, recommended_call
from ralu_core.measurement.host_sync import HostSyncRecorder
from ralu_core.pipelines.compiling import compile_denoiser, graphs_compiled

backend = sys.argv[1] if len(sys.argv) > 1 else "inductor"
device = "cuda" if torch.cuda.is_available() else "cpu"
pipe = load_reference_pipeline("flux-shapes").to(device)
pipe.set_progress_bar_config(disable=True)
call = recommended_call("flux-shapes")
call.pop("num_inference_steps", None)  # RALU recipes fix their own steps per stage
prompt = "a red circle at the top left and a blue square at the bottom right on a white background"

fast = ralu_core.accelerate(pipe, "ralu-flux-7x")
blocks = compile_denoiser(pipe.transformer, backend=backend)  # in place: `pipe` itself runs compiled now
print(f"compiled {blocks} blocks ({backend})")
for attempt in range(3):
    before, start = graphs_compiled(), time.perf_counter()
    image = fast(prompt, generator=torch.Generator().manual_seed(attempt), **call).images[0]
    print(f"call {attempt}: image {image.size}, {graphs_compiled() - before} graphs compiled")

# Where the sampling loop makes the host wait for the device (eager, so that the recorder sees every op).
with torch.compiler.set_stance("force_eager"), HostSyncRecorder.step_loop() as recorder:
    fast(prompt, generator=torch.Generator().manual_seed(0), **call)
print(recorder.format_summary())
