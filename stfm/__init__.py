"""The stfm application: the command line and the demo, above the packages they drive
(``connectors`` → ``streaming`` → ``replay``; nothing below imports from here)."""
