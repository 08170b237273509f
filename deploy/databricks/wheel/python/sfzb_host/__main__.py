from sfzb_host import main

main()
