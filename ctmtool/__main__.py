from ctmtool.cli.app import main

main()
