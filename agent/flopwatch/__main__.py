from flopwatch.commands.cli import main

main()
