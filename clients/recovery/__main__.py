from clients.recovery.cli import main

main()
