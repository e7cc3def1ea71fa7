from scan_cli.cli import main

main()
