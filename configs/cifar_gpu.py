"""configs/cifar.py on accelerators (GPUs, TPU cores): the same recipe, a few fields changed.

    python run.py --config=configs/cifar_gpu.py:cifar100_b0inc10
    python run.py --config=configs/cifar_gpu.py:cifar10_jpeg_bf16      # + mixed precision
    python run.py --config=configs/cifar_gpu.py:cifar10_jpeg --config.strategies='("replay",)'

Any argument of configs/cifar.py, optionally followed by ``_bf16``. Evaluation runs 2,000 images
a call instead of 500; ``_bf16`` trains in bfloat16 with float32 parameters
(``train.compute_dtype``), which stays an option until its effect on accuracy has been measured
on the full recipe (a GPU session's check; on the CPU bfloat16 is emulated and slow). Batches are
split over every device of the host; a ResNet epoch runs as one compiled loop there
(``train.steps_per_call`` left to choose).
"""

from configs import cifar
from configs.common import check_arg

BF16 = "_bf16"


def get_config(arg: str | None = None):
    base = tuple(cifar.BENCHMARKS) + tuple(f"{b}_smoke" for b in cifar.BENCHMARKS)
    arg = check_arg(arg, base + tuple(a + BF16 for a in base))
    config = cifar.get_config(arg.removesuffix(BF16))
    config.eval_batch_size = 2000
    if arg.endswith(BF16):
        config.train.compute_dtype = "bfloat16"
    return config
