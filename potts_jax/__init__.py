"""potts_jax: soft self-labeling with Potts relaxations, in JAX.

Import the modules you need; importing has no side effects. The core maths
sits at the top (``labels`` label codes, ``potts`` the relaxations P(p, q),
``losses`` cross-entropies and network losses, ``neighborhoods`` grid
affinities and Potts sums), next to training (``main``, ``train``, ``steps``,
``parallel``, ``checkpointing``, ``metrics``, ``xla_flags``). Subpackages group
the rest by role: ``solver`` the pseudo-label solver, ``dense`` the
permutohedral lattice and dense Potts, ``baselines`` graph cut and the exact
quadratic minimiser, ``models`` the networks and their ImageNet weights,
``data`` datasets and input pipelines, ``plots`` pictures and figures,
``tools`` command-line tools. docs/architecture.md maps each to the paper.
"""

__version__ = "0.1.0"
