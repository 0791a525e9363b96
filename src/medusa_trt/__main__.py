from medusa_trt.cli import main

main()
