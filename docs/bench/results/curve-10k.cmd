direct --connections 100 --rate 10000 --duration 15 --warmup 3
