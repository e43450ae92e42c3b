group --groups 1 --group-size 1000 --rate 200 --duration 20 --warmup 3
