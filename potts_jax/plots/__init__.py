"""Pictures: ``viz`` label colouring and panels, ``figures`` the paper's
figures, ``landscapes`` loss landscapes of the relaxations."""
