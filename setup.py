"""chord-megatron: CHORD (SFT folded into on-policy RL) on Megatron-core.

The default install is what a CPU-only machine needs to run the demo and the tests:
torch is pinned to the CPU build that installs from a local wheel on our machines, and
megatron-core to the version the CPU patches were tested against (see
chord_megatron/train/compat/cpu_patches.py). GPU users add the `gpu` extra; NVIDIA's apex is not on
PyPI (the PyPI package called `apex` is an unrelated project) -- see the README.
"""

import os

from setuptools import find_packages, setup

TORCH = "torch==2.13.0"
MEGATRON_CORE = "megatron-core==0.16.1"
# megatron-core 0.16.1 declares transformer-engine[core_cu13,pytorch]>=2.9.0a0,<2.12.0.
TRANSFORMER_ENGINE = "transformer-engine[pytorch]>=2.9.0a0,<2.12.0"
# CHORD_KEEP_TORCH=1: install into an environment whose torch and triton are already there and
# must stay (NVIDIA's NGC PyTorch containers, whose transformer-engine and apex are built against
# their own torch): torch and triton are left out of the requirements, so pip keeps them.
KEEP_TORCH = os.environ.get("CHORD_KEEP_TORCH", "") not in ("", "0")

setup(
    name="chord-megatron",
    version="0.1.0",
    description="CHORD: on-policy RL with a dynamically weighted SFT auxiliary loss, on Megatron-core",
    python_requires=">=3.11",
    packages=find_packages(include=["chord_megatron", "chord_megatron.*"])
    + find_packages("kernels", include=["chord_kernels", "chord_kernels.*"]),
    # The Triton kernels live in kernels/ beside their tests and benchmarks; their import name
    # is chord_kernels because a top-level `kernels` collides with Hugging Face's `kernels`.
    package_dir={"chord_kernels": "kernels/chord_kernels"},
    include_package_data=True,
    install_requires=([] if KEEP_TORCH else [TORCH, "triton==3.7.1"])
    + [
        MEGATRON_CORE,
        "numpy<2.5",
        "pyyaml>=6",
        # megatron.core.dist_checkpointing needs psutil but does not declare it; without it
        # the checkpoint writer subprocess dies and save hangs.
        "psutil>=5.9",
        "tqdm>=4.66",
        # metrics: TensorBoard event files and PNG curves
        "tensorboard==2.21.0",
        "matplotlib==3.11.2",
        # rollouts: the in-process engine (transformers pinned as sglang 0.5.23 pins it, so the
        # gpu extra resolves), the async SGLang client, safetensors for the disk weight sync
        "transformers==5.19.0",
        "safetensors==0.8.0",
        "aiohttp==3.14.5",
        # the "math" reward: symbolic answer checking (pure Python; brings latex2sympy2_extended, antlr4)
        "math-verify==0.9.0",
    ],
    extras_require={
        # + `pip install --no-deps sglang==0.5.23`: SGLang's own API types for the contract
        # tests (with its dependencies it would pull a CUDA torch).
        "test": [
            "pytest>=8",
            "pytest-timeout>=2.3",
            "msgspec==0.22.0",
            "sglang-router==0.3.2",
            "pyarrow==26.0.1",
            "ruff==0.17.6",
        ],
        # `chord bench loop --vs-trl`: TRL's GRPOTrainer on the same run; the settings mapping
        # (chord_megatron/commands/bench_trl.py) is written against this version's source.
        "trl": ["trl==1.16.0"],
        # Parquet data files (Hugging Face datasets' format): a 55 MB wheel, so not in the base install.
        "data": ["pyarrow==26.0.1"],
        # Trainer nodes with GPUs (NGC PyTorch containers already carry transformer-engine and
        # apex). SGLang servers run in their own environment: sglang 0.5.23 pins torch 2.14.1,
        # which conflicts with the trainer's pin, and the trainer only talks HTTP/NCCL to them.
        "gpu": [TRANSFORMER_ENGINE, "sglang-router==0.3.2"],
    },
    entry_points={"console_scripts": ["chord=chord_megatron.cli:main"]},
)
