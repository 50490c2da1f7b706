"""``python -m maas_cli`` runs the ``maas`` command."""

from ._app import main

main()
