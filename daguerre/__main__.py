from daguerre.cli import app

app()
