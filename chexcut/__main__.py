from chexcut.cli import main

main()
