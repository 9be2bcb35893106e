"""`python -m ragsoup ...`: the same CLI as the `ragsoup` command (for machines where it is not installed)."""

from ragsoup.cli import main

main()
