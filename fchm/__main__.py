from fchm.cli import app

app()
