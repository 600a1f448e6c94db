from paramctl.cli import main

main()
