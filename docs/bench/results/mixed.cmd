mixed --connections 2000 --rate 2000 --duration 30 --warmup 3
