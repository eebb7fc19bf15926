"""camp_jax: CAMP (Cross-Modal Adaptive Message Passing) in JAX/Flax."""
import setuptools

setuptools.setup(
    name="camp_jax",
    version="0.1.0",
    description="CAMP text-image retrieval (ICCV 2019) in JAX/Flax for TPU and GPU.",
    packages=setuptools.find_packages(include=["camp_jax", "camp_jax.*"]),
    python_requires=">=3.11",  # jax 0.10 needs it
    install_requires=[
        "jax>=0.10.2,<0.12",
        "flax>=0.12.8,<0.13",
        "optax>=0.2.5,<0.3",
        "orbax-checkpoint>=0.11,<0.13",
        "ml-collections>=1.0,<2",
        "clu>=0.0.12",
        "numpy>=1.26",
        "absl-py>=2.1",
        "nltk>=3.9,<4",
        "flatbuffers>=24",  # jax.export serialisation (export --stablehlo, loading artifacts)
    ],
    extras_require={
        # The input pipeline and TensorBoard writers; accelerator images often lack them.
        "data": ["tensorflow-cpu>=2.18,<2.22", "tensorboard>=2.18,<2.22",
                 "tensorflow-datasets>=4.9.7,<5", "importlib_resources>=6"],
        "viz": ["matplotlib>=3.8"],
        # Only to read the authors' .pth.tar checkpoints.
        "torch": ["torch>=2.6"],
        "test": ["pytest>=8"],
        # Accelerators, each in one resolve with the core's jax pin (also what
        # `python -m camp_jax.aot` needs to compile for TPU slices / GPUs on a CPU machine).
        "tpu": ["jax[tpu]>=0.10.2,<0.12"],
        "cuda12": ["jax[cuda12]>=0.10.2,<0.12"],
    },
)
