"""``python -m maas_client.cli`` runs the ``maas`` command."""

from ._app import main

main()
