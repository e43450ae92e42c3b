group --groups 100 --group-size 100 --rate 2000 --duration 20 --warmup 3
