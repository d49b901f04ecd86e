"""`python -m qcc`: the command line."""

from qcc.driver.cli import main

main()
