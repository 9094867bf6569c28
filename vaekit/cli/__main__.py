from vaekit.cli import main

main()
