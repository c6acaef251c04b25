module hitless-bench-go

go 1.19
