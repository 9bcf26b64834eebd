from movq_cli.cli import app

app(prog_name="movq")
