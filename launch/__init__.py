"""The checkout's entry points: ``python -m launch.train`` runs ``dpnn train`` (the code is in
``dpnn/cli/``); an installed dpnn has the ``dpnn`` command instead."""
