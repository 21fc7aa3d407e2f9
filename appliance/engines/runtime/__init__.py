"""What the engines share at run time: the fair queue in front of a pool of workers
(FairGate, RoundRobin, WorkerPool), turns at a FairGate taken from a worker thread
(ComputeTurn), and the bridge from a worker thread to the event loop (ThreadEvents). Below
every engine module, above catalog and base."""
