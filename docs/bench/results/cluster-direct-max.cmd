chat-loadgen direct --connections 400 --duration 20 --warmup 5 --addr NODE1,NODE2  (two nodes, PostgreSQL, Redis, Kafka on this machine)
