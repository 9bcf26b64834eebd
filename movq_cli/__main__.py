from movq_cli.entry import main

main()
