chat-loadgen direct --connections 1000 --rate 5000 --duration 30 --warmup 5 --addr NODE1,NODE2  (two nodes, PostgreSQL, Redis, Kafka on this machine)
