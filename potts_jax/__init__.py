"""potts_jax: soft self-labeling with Potts relaxations, in JAX.

Modules (import the ones you need; importing has no side effects):
``labels`` label codes, ``potts`` relaxations P(p, q), ``losses``
cross-entropies and network losses, ``neighborhoods`` grid affinities and
energies, ``solver`` the pseudo-label solver (``cpu_solver`` its native CPU
loop), ``quadratic`` the exact H_Q + P_Q optimum, ``models`` DeepLabV3+ on
MobileNetV2 / ResNet (Flax NNX), ``torch_checkpoint`` and ``pretrained``
torchvision weights without torch, ``checkpointing`` Orbax, ``data`` dataset
folders and synthetic inputs, ``viz`` pictures, ``demo`` the README's main
job, ``xla_flags`` the XLA:CPU loop setting the entry points apply.
"""

__version__ = "0.1.0"
