"""`python -m featurestore.cli`: the command line without the installed script."""

from featurestore.cli import app

app()
