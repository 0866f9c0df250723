from memora.cli import main

raise SystemExit(main())
