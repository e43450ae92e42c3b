chat-loadgen direct --connections 200 --rate 1000 --duration 30 --warmup 5 --addr NODE1,NODE2  (two nodes, PostgreSQL, Redis, Kafka on this machine)
