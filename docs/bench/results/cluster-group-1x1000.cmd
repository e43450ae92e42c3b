chat-loadgen group --groups 1 --group-size 1000 --rate 200 --duration 20 --warmup 5 --addr NODE1,NODE2  (two nodes, PostgreSQL, Redis, Kafka on this machine)
