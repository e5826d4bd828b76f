"""Dense (fully connected) Potts: the permutohedral lattice and its energy.

``lattice`` builds and filters the lattice, ``lattice_points`` counts its
points on the host; ``bilateral`` the dense Potts sum over all pairs with
Gaussian bilateral weights, and its gradient.
"""
