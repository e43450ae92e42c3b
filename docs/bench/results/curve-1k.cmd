direct --connections 100 --rate 1000 --duration 15 --warmup 3
